//! The long help texts of castractl's commands (`--help`, the man pages made from it).

/// The top-level help's end: the commands at a glance and the exit codes (which say how to
/// start castrad in the words every message uses, `castra_api::START_CASTRAD`).
pub fn after_help() -> String {
    format!("{COMMANDS}{EXIT_CODES}{}", castra_api::START_CASTRAD)
}

const COMMANDS: &str = "\
Commands at a glance:
  init     write a castra.toml (and a bootstrap script) for a cloud image here
  plan     what `up` would do for each VM, and why (nothing runs)
  up       start the VMs (all, or those named) and bootstrap them, following it live; exits 1
           if any VM failed; says which running VMs castra.toml has changed (drift)
  restart  stop the VMs (all, or those named), then up them: applies changed cpus, memory,
           forwards and disk
  logs     the durable logs of a VM's bootstrap runs
  events   follow castrad's event feed (`--json`: one event per line)
  status   the daemon, its projects and their VMs
  ssh      a shell (or one command) in a VM, as castrad reaches it: its key, its pinned host key
  ssh-config  OpenSSH config blocks for the VMs (`ssh -F`, `scp -F`, VS Code Remote-SSH)
  doctor   check the machine (and the project here) can run VMs; exits 1 if a check fails
  completion  the shell completion script (bash, zsh, fish)
  console  a QEMU VM's serial console: the end of its log, or `--follow` it live
  cp       copy files to or from a VM (`cp [-r] SRC VM:DST`, `cp [-r] VM:SRC DST`) over sftp
  image    castrad's image store: ls, pull [IMAGE], rm DIGEST, prune, adopt [VM...], catalog

";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation ran and failed
  2  usage error, invalid castra.toml, or a preflight rejection (conflicting or unknown overrides,
     an unknown VM name given to any command, an image in use); a base image whose content does
     not match its checksum; `init` finding a file it would write
  3  castrad is not reachable; `version` needs castrad only with --daemon. To ";

pub const UP_HELP: &str = "\
Output:
  on a terminal  a live line per VM (step, what it waits on, its latest output), then a summary
  piped          one plain line per event (`web-0  apply  | output line`), then the summary
  --json         every event envelope as one JSON line, then {\"outcome\": ...} as the last line

Exit codes: 0 every VM ended Success, NoOp or Skipped; 1 any VM Failed or was Rejected (another
operation was bootstrapping it, or its QEMU is unresponsive: `castractl down VM` stops it);
2 invalid castra.toml or overrides, an unknown VM name (restart: also a disk asked to shrink),
nothing started; also 2 when a VM failed because its base image's content did not match its
checksum (nothing was kept); 3 castrad not reachable. A base image not in the store yet is
fetched first, its progress shown (a bar on a terminal).
Ctrl-C stops following (exit 1); it does not tell castrad to stop: `castractl cancel [VM...]`
stops the runs.";

pub const EVENTS_HELP: &str = "\
Prints events until Ctrl-C (exit 0) or until castrad closes the connection (exit 1).
Lines: `SEQ  VM  WHAT`; with --json, each event envelope as one compact JSON line, flushed at once.";

pub const CONSOLE_HELP: &str = "\
The serial console of a QEMU VM as castrad records it since the VM's last start (serial.log,
capped at `serial_log_max`). With --follow, what the guest writes next is streamed (past the
log's cap too), at most 32 KiB a second after a 64 KiB burst: castractl says how many bytes
were left out. Ends when the VM stops (exit 0). --json: castra.console's result; with
--follow, each castra.consoleOutput notification as one JSON line (the last has `end`).";

pub const CP_HELP: &str = "\
Exactly one of SRC and DST is VM:PATH (a colon with no slash before it, like scp: write a local
name with a colon as ./a:b). Relative VM paths are relative to the login's home directory; no
wildcards or ~ (every name means itself, quotes, spaces and all). Runs `sftp` with the settings
`castractl ssh-config VM` prints. Exit 0 copied, 1 the copy failed (sftp's reason is shown),
2 usage (an unknown VM, a missing local source, a directory without -r), 3 castrad unreachable.
Examples: castractl cp -r ./src web-0:/srv/app    castractl cp db:/var/log/db.log .";

pub const INIT_HELP: &str = "\
Writes castra.toml and bootstrap.sh in the current directory (with --config PATH: that file, the
script beside it): one VM, `dev`, from a cloud image (IMAGE: a catalog name, see `castractl image
catalog`, or an https:// URL), with the user `dev` that castrad's cloud-init seed creates
(passwordless sudo), and a bootstrap script stub that runs in it. Every setting is commented;
docs/CONFIGURATION.md is the reference. Nothing is overwritten: if either file exists, init
writes nothing and exits 2 naming it. Then: castractl up, castractl ssh dev.";
