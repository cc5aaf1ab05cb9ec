// jemalloc, with its background threads: freed memory goes back to the system within seconds
// of an attack on the request-body budget, whichever thread freed it. Measured with
// `just bench-bodies` (BENCHMARKS.md, "Request-body memory"): 30 s after the attack, glibc's
// malloc still held 0.45 to 1.1 GiB (its mmap threshold rises to the largest block freed, and
// holes in its arenas stay resident) and mimalloc 100 MiB above idle (memory freed by another
// thread waits for its owning thread to allocate again); jemalloc was 7 MiB above idle, and
// idles at 15 MiB where mimalloc idled at 26 MiB. musl's allocator (the static image) is slow
// under contention.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    trustgate::cli::run()
}
