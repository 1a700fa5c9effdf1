fn main() -> std::process::ExitCode {
    castrad::cli::main()
}
