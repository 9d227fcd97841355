import FerryCLI

// Chunks of a few MiB are allocated and freed at a high rate (per request and per worker). With glibc's
// defaults each goes back to the kernel (mmap above 128 KiB, heap trimmed above 128 KiB free) and the next one
// pays for fresh zeroed pages: measured at a quarter of a remote copy's CPU. They are kept instead, up to a
// bound set by the largest chunk, not by the dataset.
FerryProcess.keepFreedMemory()

FerryCommand.main()
