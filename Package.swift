// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "ferry",
    // Linux only: the code uses Glibc, renameat2, syncfs, openat beneath a root and Linux xattrs; SwiftPM's
    // `platforms` lists Apple platforms only, so none is declared (it claimed macOS 15, which never built).
    products: [
        .executable(name: "ferry", targets: ["ferry"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.90.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .executableTarget(name: "ferry", dependencies: ["FerryCLI"], swiftSettings: strict),
        .target(
            name: "FerryCLI",
            dependencies: [
                "FerryCore", "CFerrySys", "FerryEngine", "FerryLocal", "FerryGraphite", "FerryS3", "FerryTap", "FerryRemote", "FerryLive",
                "FerryObserve",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryObserve",
            dependencies: [
                "FerryCore", "FerryTap",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "FerryEngine",
            dependencies: [
                "FerryCore", "FerryDigest",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(name: "FerryDigest", dependencies: ["CCrypto"], swiftSettings: strict),
        .target(
            name: "FerryS3",
            dependencies: [
                "FerryCore", "FerryDigest", "FerryTap", "FerryHTTP",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "FerryZstd", dependencies: ["CZstd"], swiftSettings: strict),
        .target(
            name: "FerryRemote",
            dependencies: [
                "FerryCore", "FerryDigest", "FerryHTTP", "FerryZstd",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict),
        .target(name: "FerryHTTP", dependencies: ["CCurl"], swiftSettings: strict),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .target(
            name: "FerryGraphite",
            dependencies: [
                "FerryCore", "FerryLocal", "FerryTap",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .target(name: "FerryLocal", dependencies: ["FerryCore", "CFerrySys"], swiftSettings: strict),
        .target(name: "CFerrySys"),
        .target(name: "FerryTesting", dependencies: ["FerryCore", "FerryDigest", "FerryEngine"], swiftSettings: strict),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .testTarget(
            name: "FerryCoreTests",
            dependencies: ["FerryCore", "FerryDigest", "FerryLocal", "FerryTesting"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "FerryEngineTests",
            dependencies: [
                "FerryCore", "FerryEngine", "FerryLocal", "FerryTesting",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "FerryS3Tests", dependencies: ["FerryS3", "FerryDigest", "FerryCore", "FerryTesting"], swiftSettings: strict),
        .testTarget(
            name: "FerryGraphiteTests",
            dependencies: ["FerryCore", "FerryGraphite", "FerryTesting"],
            swiftSettings: strict
        ),
        .target(
            name: "FerryTap",
            dependencies: [
                "FerryCore", "CFerrySys",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "FerryRemoteTests",
            dependencies: ["FerryRemote", "FerryCore", "FerryDigest", "FerryGraphite", "FerryZstd", "FerryTesting"],
            swiftSettings: strict
        ),
        .target(
            name: "FerryLive",
            dependencies: [
                "FerryCore", "FerryEngine", "FerryTap", "CFerrySys",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "FerryTapTests", dependencies: ["FerryTap", "FerryCore", "FerryTesting"], swiftSettings: strict),
        .testTarget(
            name: "FerryIntegrationTests",
            dependencies: [
                "FerryCore", "FerryDigest", "FerryTesting", "FerryGraphite", "FerryLocal", "FerryS3", "FerryEngine", "FerryTap",
                "FerryRemote", "FerryZstd",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
    ]
)
