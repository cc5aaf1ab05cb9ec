// mimalloc, not the system allocator: after a burst of large request bodies glibc's malloc keeps
// the freed memory (its mmap threshold rises to the largest freed block, and holes inside its
// arenas are never returned), so RSS stayed hundreds of MiB above idle after an attack; mimalloc
// returns freed pages to the OS within milliseconds. musl's allocator (the static image) is
// slow under contention. BENCHMARKS.md ("Request-body memory") has the measurements.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    trustgate::cli::run()
}
