fn main() -> std::process::ExitCode {
    castractl::main()
}
