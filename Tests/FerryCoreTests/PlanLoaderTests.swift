import FerryTesting
import Foundation
import Testing

@testable import FerryCore

@Suite struct PlanLoaderTests {
    let loader = PlanLoader(
        storeKinds: [StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true)],
        plannedKinds: ["s3": "is planned but not implemented"])

    /// Parses `yaml` as if it were `dir/plan.yml`; returns the plan or the diagnostics.
    func parse(_ yaml: String, in dir: TempDir) -> Result<Plan, PlanError> {
        do {
            return .success(try loader.parse(yaml, displayPath: "plan.yml", absolutePath: dir.path + "/plan.yml"))
        } catch {
            return .failure(error)
        }
    }

    func diagnostics(_ yaml: String, in dir: TempDir) -> [PlanDiagnostic] {
        if case .failure(let e) = parse(yaml, in: dir) { return e.diagnostics }
        return []
    }

    func base(_ dir: TempDir) throws -> String {
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        return """
            version: 1
            name: t
            source: { kind: fs, path: src }
            destination: { kind: fs, path: dst }

            """
    }

    @Test func validPlanResolvesPathsAndDefaults() throws {
        let dir = TempDir()
        let yaml = try base(dir) + "copy: { chunk_size: 4MiB, concurrency: 8, bandwidth: 50MiB/s }\nverify: { mode: sample, sample: 5% }\n"
        let plan = try parse(yaml, in: dir).get()
        #expect(plan.source.path == PathUtil.normalize(dir.path + "/src"))
        #expect(plan.destination.path == PathUtil.normalize(dir.path + "/dst"))
        #expect(plan.copy.chunkSize == 4 * 1_048_576)
        #expect(plan.copy.concurrency == 8)
        #expect(plan.copy.bandwidth == 52_428_800)
        #expect(plan.verify.mode == .sample)
        #expect(plan.verify.sample == 0.05)
        #expect(plan.cutover.maxVerifyAge == 3600)
        #expect(plan.stateDirectory == PathUtil.normalize(dir.path + "/.ferry/t"))
    }

    /// Compression is zstd (level 3) unless the plan says none; a bad value or level is refused at its line.
    @Test func compressionIsZstdOrNoneAndABadValueIsRefusedWhereItIs() throws {
        let dir = TempDir()
        let plain = try parse(try base(dir), in: dir).get()
        #expect(plain.copy.compression == "zstd" && plain.copy.compressionLevel == 3)
        let d = diagnostics(try base(dir) + "copy:\n  compression: gzip\n", in: dir)
        #expect(d.count == 1, "\(d)")
        #expect(d.first?.field == "copy.compression" && d.first?.line == 6, "\(d)")
        let l = diagnostics(try base(dir) + "copy:\n  compression_level: 40\n", in: dir)
        #expect(l.first?.field == "copy.compression_level" && l.first?.line == 6, "\(l)")
        #expect(try parse(try base(dir) + "copy: { compression: off }\n", in: dir).get().copy.compression == "none")
        #expect(try parse(try base(dir) + "copy: { compression_level: 9 }\n", in: dir).get().copy.compressionLevel == 9)
        #expect(plain.copy.pointCodec)
        #expect(try parse(try base(dir) + "copy: { point_codec: off }\n", in: dir).get().copy.pointCodec == false)
        let p = diagnostics(try base(dir) + "copy:\n  point_codec: maybe\n", in: dir)
        #expect(p.first?.field == "copy.point_codec" && p.first?.line == 6, "\(p)")
    }

    @Test func malformedYAMLNamesLine() throws {
        let dir = TempDir()
        let d = diagnostics("version: 1\nname: t\nsource: { kind: fs, path: [unclosed\n", in: dir)
        #expect(d.count == 1)
        #expect(d.first?.line != nil)
        #expect(d.first?.message.contains("malformed YAML") == true)
    }

    @Test func unknownKeyNamesFieldLineAndSuggestion() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "copy:\n  chunk_sise: 8MiB\n", in: dir)
        #expect(d.count == 1)
        #expect(d[0].field == "copy.chunk_sise")
        #expect(d[0].line == 6)
        #expect(d[0].message.contains("did you mean 'chunk_size'"))
        #expect(d[0].description.hasPrefix("plan.yml:6:3: copy.chunk_sise: unknown key"))
    }

    @Test func wrongTypesAreReported() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "copy: { concurrency: many }\ncutover: { hooks: \"echo hi\" }\n", in: dir)
        #expect(d.map(\.field).sorted() == ["copy.concurrency", "cutover.hooks"])
        #expect(d.first { $0.field == "copy.concurrency" }?.message.contains("whole number") == true)
        #expect(d.first { $0.field == "cutover.hooks" }?.message.contains("list") == true)
    }

    @Test func malformedSizeIsExplained() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "copy: { chunk_size: 8 megs }\n", in: dir)
        #expect(d.count == 1)
        #expect(d[0].field == "copy.chunk_size")
        #expect(d[0].message.contains("expected a size such as 8MiB"))
        #expect(d[0].line == 5)
    }

    @Test func missingSourcePathAndMissingKeys() throws {
        let dir = TempDir()
        let d = diagnostics("version: 1\nname: t\nsource: { kind: fs, path: nowhere }\n", in: dir)
        #expect(d.contains { $0.field == "source.path" && $0.message.contains("does not exist") })
        #expect(d.contains { $0.field == "destination" && $0.message.contains("missing required key") })
    }

    @Test func destinationInsideSourceIsRefused() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        let d = diagnostics(
            "version: 1\nname: t\nsource: { kind: fs, path: src }\ndestination: { kind: fs, path: src/copy }\n", in: dir)
        #expect(d.count == 1)
        #expect(d[0].message.contains("inside the source"))
        let d2 = diagnostics(
            "version: 1\nname: t\nsource: { kind: fs, path: src }\ndestination: { kind: fs, path: . }\n", in: dir)
        #expect(d2.first?.message.contains("contains the source") == true)
    }

    @Test func destinationInsideSourceThroughSymlinkIsRefused() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        symlink(dir.sub("src"), dir.sub("alias"))
        let d = diagnostics(
            "version: 1\nname: t\nsource: { kind: fs, path: src }\ndestination: { kind: fs, path: alias/out }\n", in: dir)
        #expect(d.first?.message.contains("inside the source") == true)
    }

    @Test func unsupportedKindsAndVersionsAreRefused() throws {
        let dir = TempDir()
        let d = diagnostics(
            "version: 2\nname: t\nsource: { kind: s3, bucket: x }\ndestination: { kind: ftp, path: x }\n", in: dir)
        #expect(d.contains { $0.field == "version" })
        #expect(d.contains { $0.field == "source.kind" && $0.message.contains("planned") })
        #expect(d.contains { $0.field == "destination.kind" && $0.message.contains("unknown kind 'ftp'") })
    }

    @Test func verifyRules() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "verify: { mode: sample }\n", in: dir)
        #expect(d.first?.field == "verify.sample")
        let d2 = diagnostics(try base(dir) + "verify: { mode: full, sample: 5% }\n", in: dir)
        #expect(d2.first?.message.contains("only applies with mode: sample") == true)
        let d3 = diagnostics(try base(dir) + "verify: { mode: quick }\n", in: dir)
        #expect(d3.first?.field == "verify.mode")
    }

    @Test func metricsEndpointsAreHostPortsAndTheTapsIsItsOwn() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "metrics: { listen: 9108 }\n", in: dir)
        #expect(d.first?.field == "metrics.listen")
        #expect(d.first?.message.contains("HOST:PORT") == true)
        #expect(d.first?.line != nil)
        let d2 = diagnostics(try base(dir) + "metrics: { listen: \"127.0.0.1:9108\", tap_listen: \"127.0.0.1:9108\" }\n", in: dir)
        #expect(d2.first?.field == "metrics.tap_listen")
        let d3 = diagnostics(try base(dir) + "metrics: { listen: \"127.0.0.1:9108\", scrape: 1s }\n", in: dir)
        #expect(d3.first?.field == "metrics.scrape")
        let d4 = diagnostics(try base(dir) + "metrics: { listen: \"127.0.0.1:9108\", linger: soon }\n", in: dir)
        #expect(d4.first?.field == "metrics.linger")
        #expect(diagnostics(try base(dir) + "metrics: { listen: \"127.0.0.1:0\", tap_listen: \"[::1]:9109\", linger: 15s }\n", in: dir).isEmpty)
    }

    @Test func copyHeadersNeedABucketAndFenceNamespacesAreDottedWords() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir) + "copy: { headers: { Cache-Control: \"max-age=60\" } }\n", in: dir)
        #expect(d.first?.field == "copy.headers")
        #expect(d.first?.message.contains("only an s3 destination") == true, "\(d)")
        let d2 = diagnostics(try base(dir) + "copy: { headers: [ a ] }\n", in: dir)
        #expect(d2.first?.field == "copy.headers")
        let d3 = diagnostics(try base(dir) + "cutover: { fence_namespace: \"ops..x\" }\n", in: dir)
        #expect(d3.first?.field == "cutover.fence_namespace")
        let ok = try parse(try base(dir) + "cutover: { fence_namespace: ops.migration }\n", in: dir).get()
        #expect(ok.cutover.fenceNamespace == "ops.migration")
    }

    @Test func badNameAndDuplicateKeys() throws {
        let dir = TempDir()
        let d = diagnostics(try base(dir).replacingOccurrences(of: "name: t", with: "name: ../evil"), in: dir)
        #expect(d.first?.field == "name")
        let d2 = diagnostics(try base(dir) + "name: again\n", in: dir)
        #expect(d2.first?.message.contains("duplicate") == true)
    }

    @Test func notAMapping() throws {
        let dir = TempDir()
        #expect(!diagnostics("- just\n- a list\n", in: dir).isEmpty)
        #expect(!diagnostics("", in: dir).isEmpty)
    }

    @Test func identityChangesWithSourceAndChunkSizeOnly() throws {
        let dir = TempDir()
        let a = try parse(try base(dir), in: dir).get()
        let b = try parse(try base(dir) + "copy: { concurrency: 2 }\n", in: dir).get()
        let c = try parse(try base(dir) + "copy: { chunk_size: 1MiB }\n", in: dir).get()
        #expect(a.identity == b.identity)
        #expect(a.identity != c.identity)
    }

    @Test func stateInsideTheSourceOrTheDestinationIsRefusedForEveryPair() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.sub("src"), withIntermediateDirectories: true)
        let loader = PlanLoader(storeKinds: [
            StoreKindSchema(kind: "fs", keys: ["path"], required: ["path"], pathIsLocal: true),
            StoreKindSchema(kind: "s3", keys: ["bucket"], required: ["bucket"], pathIsLocal: false),
        ])
        func problems(_ yaml: String) -> [String] {
            do {
                _ = try loader.parse(yaml, displayPath: "plan.yml", absolutePath: dir.path + "/plan.yml")
                return []
            } catch {
                return error.diagnostics.map(\.description)
            }
        }
        let fsfs = "version: 1\nname: t\nsource: { kind: fs, path: src }\ndestination: { kind: fs, path: dst }\n"
        #expect(problems(fsfs + "state: src\n").contains { $0.contains("plan.yml:5:8: state:") && $0.contains("must not be the source") })
        #expect(problems(fsfs + "state: src/.state\n").contains { $0.contains("must not be the source") })
        #expect(problems(fsfs + "state: dst/.state\n").contains { $0.contains("must not be the destination") })
        let s3fs = "version: 1\nname: t\nsource: { kind: s3, bucket: b }\ndestination: { kind: fs, path: dst }\n"
        #expect(problems(s3fs + "state: dst/.ferry-state\n").contains { $0.contains("must not be the destination") })
        let fss3 = "version: 1\nname: t\nsource: { kind: fs, path: src }\ndestination: { kind: s3, bucket: b }\n"
        #expect(problems(fss3 + "state: src/.ferry-state\n").contains { $0.contains("must not be the source") })
        #expect(problems(fss3 + "state: elsewhere\n") == [])
        #expect(problems(fss3 + "copy: { symlinks: copy }\n").contains { $0.contains("copy.symlinks") && $0.contains("cannot hold symbolic links") })
        #expect(problems(fsfs + "copy: { symlinks: sometimes, specials: maybe }\nexclude: [\"[z-a]\"]\n").count == 3)
    }

    @Test func anAliasUsedAsAMappingKeyIsRefusedAtOnce() throws {
        let dir = TempDir()
        // The review's bomb: depth 9 ran for more than a minute before; refused on the text now.
        var yaml = try base(dir) + "snapshot:\n  a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for i in 1..<9 { yaml += "  a\(i): &a\(i) [" + [String](repeating: "*a\(i - 1)", count: 10).joined(separator: ",") + "]\n" }
        let started = Date()
        for key in ["? *a8\n: 1\n", "*a8 : 1\n", "{ *a8 : 1 }\n", "[*a8, *a8]: 1\n"] {
            let d = diagnostics(yaml + key, in: dir)
            #expect(d.contains { $0.message.contains("alias") && $0.message.contains("mapping key") }, "\(key): \(d)")
        }
        #expect(Date().timeIntervalSince(started) < 5)
        // Aliases as values stay legal.
        let ok = try base(dir) + "cutover:\n  hooks: &h [\"true\"]\n  rollback_hooks: *h\n"
        #expect(diagnostics(ok, in: dir).isEmpty)
    }

    @Test func storeAndTapProblemsAreLocatedByTheirField() throws {
        let dir = TempDir()
        let yaml = try base(dir) + "copy: { chunk_size: 4MiB }\n"
        let plan = try parse(yaml, in: dir).get()
        let d = PlanLoader.diagnostic("copy.chunk_size: at least 5MiB", plan: plan, displayPath: "plan.yml")
        #expect(d.description == "plan.yml:5:21: copy.chunk_size: at least 5MiB")
        #expect(PlanLoader.diagnostic("no field here", plan: plan, displayPath: "plan.yml").description == "plan.yml: no field here")
    }

    /// `ferry rehearse --set`: dotted keys into flow and block mappings, values read as YAML, precise errors.
    @Test func overridesSetNestedKeysAndRefuseNonsense() throws {
        let text = """
            version: 1
            name: job
            source: { kind: fs, path: /data }
            destination: { kind: fs, path: /new }
            copy:
              concurrency: 4
            """
        let staging = TempDir("ferry-overrides")
        let out = try PlanLoader.applyOverrides(
            text, ["source.path=\(staging.path)", "copy.concurrency=2", "verify.mode=sample", "verify.sample=5%", "state=/s"])
        let plan = try loader.parse(out, displayPath: "plan.yml", absolutePath: "/etc/ferry/plan.yml")
        #expect(plan.source.path == staging.path)
        #expect(plan.destination.path == "/new")
        #expect(plan.copy.concurrency == 2)
        #expect(plan.verify.mode == .sample)
        #expect(plan.stateDirectory == "/s")
        for (bad, why) in [("source.path.x=1", "source.path is not a mapping"), ("nokey", "is not key.path=value"), ("a..b=1", "empty part")] {
            do {
                _ = try PlanLoader.applyOverrides(text, [bad])
                Issue.record("\(bad) was taken")
            } catch {
                #expect(error.diagnostics.first?.message.contains(why) == true, "\(bad): \(error.diagnostics)")
            }
        }
    }
}
