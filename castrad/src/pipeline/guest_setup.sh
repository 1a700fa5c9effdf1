# The guest side of a QEMU guest without cloud-init, once per boot (pipeline/guest_setup.rs):
# mount its shared folders and put it on the project network, what the seed does for a
# cloud-init guest. Evaluated inside the driver (driver.sh: `m`, `root`, `block` are its
# functions), or on its own behind guest_setup.rs's PRELUDE. Sent compacted (ssh::compact).
#
# Arguments: the mount transport (virtiofs|9p), the number of mounts, a (tag, guest path,
# ro|rw) triple for each; then the project NIC's MAC ("" = no network), the address with
# its prefix and the hosts file (/etc/hosts). Stdin (with a network): a block (a line count,
# then the lines) of hosts lines. Everything is idempotent: a mount point in use, an address
# already set and a hosts file that already says it are left alone. Ends with one marker: `guest-setup 0 <what
# was done>` or `guest-setup 1 <what failed>` (each failure's own words, cut short).
su=; root || su="sudo -n"
gs_t=$1; gs_n=$2; shift 2; gs_ok=; gs_err=
gs_cut() { printf %s "$1" | tr -s "\n" " " | cut -c1-200; }
# Something is mounted at $1: mountpoint(1), or (busybox has none) /proc/mounts, where a
# blank or a backslash in a path is an octal escape.
gs_in() {
  if command -v mountpoint >/dev/null; then mountpoint -q -- "$1"
  else grep -qF " $(printf %s "$1" | sed 's/\\/\\134/g; s/ /\\040/g') " /proc/mounts; fi
}
# gs_pt DIR: DIR can be mounted on as root without another account of the guest choosing
# where: no component of it is a symbolic link, and each directory above it is owned by root
# or us and cannot be written by group or others (a root-owned sticky one such as /tmp
# excepted), checked with one stat, failing closed; so nobody else can swap a component once
# checked. The missing ones are then made one at a time (mkdir follows no symlink in the last
# component and fails on one planted meanwhile). DIR itself may be anyone's: the mount covers
# it. Prints why not. (Like the driver's `safe`, which checks remote_dir.)
gs_pt() {
  gs_d=$1; gs_p=; gs_r=${1#/}; set --
  while [ -n "$gs_r" ]; do
    gs_c=${gs_r%%/*}; case $gs_r in */*) gs_r=${gs_r#*/} ;; *) gs_r= ;; esac
    [ ! -L "$gs_p/$gs_c" ] || { echo "$gs_p/$gs_c is a symbolic link"; return 1; }
    [ -e "$gs_p/$gs_c" ] || { gs_r=$gs_c${gs_r:+/$gs_r}; break; }
    set -- "$@" "${gs_p:-/}"; gs_p=$gs_p/$gs_c
  done
  # The last existing directory is where the missing ones go: checked too.
  [ -z "$gs_r" ] || set -- "$@" "${gs_p:-/}"
  [ -n "$gs_r" ] || [ -d "$gs_p" ] || { echo "$gs_p is not a directory"; return 1; }
  [ $# = 0 ] || stat -c "%u %a %n" -- "$@" 2>&1 | { k=0; while read -r u a n; do
    k=$((k+1)); s="$n is owned by uid $u, mode $a"
    case $u$a in *[!0-9]*) echo "cannot check $n: $u $a"; exit 1 ;; esac
    [ "$u" = 0 ] || [ "$u" = "$uid" ] || { echo "$s"; exit 1; }
    [ $((0$a & 022)) = 0 ] || { [ "$u" = 0 ] && [ $((0$a & 01000)) != 0 ]; } || { echo "$s: others can write to it"; exit 1; }
  done; [ "$k" = $# ] || { echo "cannot check the directories above $gs_d (stat -c)"; exit 1; }; } || return 1
  while [ -n "$gs_r" ]; do
    gs_c=${gs_r%%/*}; case $gs_r in */*) gs_r=${gs_r#*/} ;; *) gs_r= ;; esac
    gs_p=$gs_p/$gs_c; $su mkdir -m 755 -- "$gs_p" || return 1
  done
}
while [ "$gs_n" -gt 0 ]; do
  if ! e=$(gs_pt "$2" 2>&1); then gs_err="${gs_err}refusing to mount $1 at $2: $(gs_cut "$e"); "
  elif gs_in "$2" 2>/dev/null; then gs_ok="$gs_ok $2"
  elif [ "$gs_t" = 9p ] && e=$($su mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$3" -- "$1" "$2" 2>&1); then gs_ok="$gs_ok $2"
  elif [ "$gs_t" != 9p ] && e=$($su mount -t virtiofs -o "$3" -- "$1" "$2" 2>&1); then gs_ok="$gs_ok $2"
  else gs_err="${gs_err}cannot mount $1 ($gs_t) at $2: $(gs_cut "$e"); "; fi
  shift 3; gs_n=$((gs_n-1))
done
[ -z "$gs_ok" ] || gs_ok="mounted$gs_ok ($gs_t)"
gs_mac=$1; gs_cidr=$2; gs_hf=$3; shift 3
if [ -n "$gs_mac" ]; then
  block; gs_hosts=$out; gs_dev=
  for d in /sys/class/net/*; do
    a=; { read -r a <"$d/address"; } 2>/dev/null || continue
    if [ "$a" = "$gs_mac" ]; then gs_dev=${d##*/}; break; fi
  done
  if [ -z "$gs_dev" ]; then gs_err="${gs_err}no network interface has the MAC $gs_mac; "
  elif e=$({ $su ip link set dev "$gs_dev" up && { ip addr show dev "$gs_dev" | grep -qF "inet $gs_cidr " || $su ip addr add "$gs_cidr" dev "$gs_dev"; }; } 2>&1); then gs_ok="${gs_ok:+$gs_ok; }$gs_cidr on $gs_dev"
  else gs_err="${gs_err}cannot set $gs_cidr on $gs_dev: $(gs_cut "$e"); "; fi
  # The hosts file: castrad's block (between its two marker lines) replaced, the rest kept.
  gs_new=$({ sed "/^# castra project network: begin$/,/^# castra project network: end$/d" "$gs_hf" 2>/dev/null || true; printf "# castra project network: begin\n%s# castra project network: end\n" "$gs_hosts"; })
  if printf "%s\n" "$gs_new" | cmp -s - "$gs_hf"; then gs_ok="$gs_ok; $gs_hf as it was"
  elif e=$({ printf "%s\n" "$gs_new" | $su tee "$gs_hf.castra" >/dev/null && $su mv -f "$gs_hf.castra" "$gs_hf"; } 2>&1); then gs_ok="$gs_ok; $gs_hf written"
  else gs_err="${gs_err}cannot write $gs_hf: $(gs_cut "$e"); "; fi
fi
if [ -n "$gs_err" ]; then m guest-setup 1 "${gs_err%; }"; exit 0; fi
m guest-setup 0 "$gs_ok"
