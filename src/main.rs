fn main() -> std::process::ExitCode {
    trustgate::cli::run()
}
