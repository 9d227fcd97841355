#ifndef FERRY_CCRYPTO_SHIM_H
#define FERRY_CCRYPTO_SHIM_H
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/core_names.h>

/// HMAC-SHA256 in one call through OpenSSL 3's EVP_MAC (the OSSL_PARAM array naming the digest is built here,
/// where the macros are available). Returns 1 on success, writing 32 bytes to `out`.
static inline int ferry_hmac_sha256(const void *key, size_t keylen, const void *data, size_t datalen,
                                    unsigned char *out) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) return 0;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    int ok = 0;
    if (ctx != NULL) {
        char digest[] = "SHA256";
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
        params[1] = OSSL_PARAM_construct_end();
        size_t outlen = 0;
        ok = EVP_MAC_init(ctx, (const unsigned char *)key, keylen, params) == 1
            && EVP_MAC_update(ctx, (const unsigned char *)data, datalen) == 1
            && EVP_MAC_final(ctx, out, &outlen, 32) == 1 && outlen == 32;
        EVP_MAC_CTX_free(ctx);
    }
    EVP_MAC_free(mac);
    return ok;
}
#endif
