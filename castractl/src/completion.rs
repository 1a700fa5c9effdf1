//! `castractl completion SHELL`: the shell completion script, generated from the command
//! line's own definition (clap_complete), so it always knows every subcommand and flag.

use clap::ValueEnum;

/// The shells castractl writes completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    /// The file name the shell looks for: in bash-completion's and fish's completion
    /// directories, and zsh's `$fpath`.
    pub fn file_name(self) -> &'static str {
        match self {
            Shell::Bash => "castractl",
            Shell::Zsh => "_castractl",
            Shell::Fish => "castractl.fish",
        }
    }
}

/// The completion script of `command` (castractl's) for `shell`.
pub fn script(shell: Shell, command: &mut clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    let name = command.get_name().to_owned();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, command, name, &mut out);
    out
}
