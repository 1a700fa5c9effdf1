# The guest side of a run, one shell session (sent compacted: comment lines, indentation and
# blank lines are dropped, see ssh::compact). In order: install the Vizier agent if this
# version is not there yet, make sure exactly one instance runs under the guest's supervisor,
# read its banner, mirror its log; then open the bootstrap session in remote_dir (read the env
# block), unpack the archive, run the script, verify.
#
# Progress goes to stdout as marker lines `CASTRA-<nonce> <step> [code] [detail]`, each after
# a newline in case the script's last line had none (and two on stderr around the script,
# likewise);
# pipeline/driver.rs parses them (`Marker`). Arguments: nonce, remote_dir, script file name, verify command ("" = none),
# verify path ("" = none), Vizier directory ("" = /opt/castra/vizier for root,
# <remote_dir>/.vizier otherwise), the agent's version and text (an argument, because the
# shell's `read` takes a pipe one byte per system call; "-" when it comes first on stdin
# instead, past ssh::COMMAND_LIMIT), the health check's interval in seconds ("" = end the
# session at `done`), whether to wait for cloud-init first ("" = no), whether the supervisor
# set-up comes on stdin ("" = no; vizier/supervisor.sh, sent only when castrad has not seen
# the agent running: a run that finds it running needs none), the guest setup's shell text
# ("" = none; guest_setup.sh) and its arguments, then the program. Stdin: [the agent block,]
# [the supervisor set-up block,] [the guest setup's /etc/hosts block,] the env block (a line
# count, then quoted assignments), the tar archive. A block is a line count, then the lines.
#
# After `done` the session becomes the agent's `watch` (the Vizier health check's reports),
# so a run and the watching that follows it cost the guest one session start, not two.
#
# Every process this starts costs the guest a fork and an exec (about a millisecond of CPU
# each; more under emulation), so files are read with `read`, not `cat`, the uid is asked
# for only when needed, and a rerun skips what is already in place.
set -e
nonce=$1; dir=$2; script=$3; vcmd=$4; vpath=$5; vdir=$6; vver=$7; agent=$8; every=$9; shift 9
ciwait=$1; vs=$2; gs=$3; shift 3
m() { printf "\nCASTRA-%s %s\n" "$nonce" "$*"; }
block() { IFS= read -r n; out=; while [ "$n" -gt 0 ]; do IFS= read -r l; out="$out$l
"; n=$((n-1)); done; }
if [ "$agent" = - ]; then block; agent=$out; fi
if [ -n "$vs" ]; then block; vs=$out; fi
# A cloud-init guest is bootstrapped only once cloud-init has finished: its result file says so
# at once (no Python start-up); otherwise `cloud-init status --wait` waits, and on errors its
# own words are reported.
if [ -n "$ciwait" ]; then
  ciok() { [ -e /run/cloud-init/result.json ] && tr -d " \n" </run/cloud-init/result.json | grep -q '"errors":\[\]'; }
  if ciok; then m cloud-init 0 done
  elif ! command -v cloud-init >/dev/null; then m cloud-init 127; exit 0
  else
    cistatus=$(cloud-init status --wait --long 2>&1 | sed "s/^\.*//" | tr -s "\n" " " | cut -c1-600)
    if ciok; then m cloud-init 0 done
    else m cloud-init 1 "$cistatus"; exit 0; fi
  fi
fi
m pid $$
uid=
root() { [ -n "$uid" ] || uid=$(id -u); [ "$uid" = 0 ]; }
# A guest without cloud-init, once per boot: its shared folders and its project network (a
# cloud-init guest's seed does that), before anything else, so the script finds them. Sent
# only when castrad has not done it yet this boot; it ends with the `guest-setup` marker.
[ -z "$gs" ] || eval "$gs"
# safe DIR: DIR and each of its parents up to / are owned by us or root, are not symlinks,
# and cannot be written by others (a root-owned sticky parent such as /var/tmp excepted;
# DIR itself never): otherwise another account could swap what runs (the owner of any
# parent can rename what is in it). Prints why not. One stat for the whole chain, which must
# answer for every path: a guest whose stat cannot (none, or one without -c: BSD, macOS, a
# small busybox) fails the check (`uncheckable: …`) rather than passing it; one that prints
# something else than numbers fails it in the arithmetic.
safe() {
  d=$1; p=$1; set --
  while :; do
    [ ! -L "$p" ] || { echo "$p is a symbolic link"; return 1; }
    set -- "$@" "$p"; case $p in /) break ;; */*) p=${p%/*}; p=${p:-/} ;; *) break ;; esac
  done
  root || :; c=$#; stat -c "%u %a %n" -- "$@" | { k=0; while read -r u a n; do
    k=$((k+1)); w=$((0$a & 022)); s="$n is owned by uid $u, mode $a"
    [ "$u" = 0 ] || [ "$u" = "$uid" ] || { echo "$s"; exit 1; }
    [ $w = 0 ] || { [ "$n" != "$d" ] && [ "$u" = 0 ] && [ $((0$a & 01000)) != 0 ]; } || { echo "$s: others can write to it"; exit 1; }
  done; [ $k = $c ] || { echo "uncheckable: stat gave $k of $c"; exit 1; }; }
}
if [ -n "$vdir" ]; then vlog=$vdir/service.log
elif root; then vdir=/opt/castra/vizier; vlog=/var/log/castra/vizier/service.log
else vdir=$dir/.vizier; vlog=$vdir/service.log; fi
vbin=$vdir/$vver/vizier.sh; vstate=$vdir/state
# Private from the start (a non-root user's Vizier directory is in remote_dir, which this
# makes too); the subshell costs no process: mkdir, its last command, replaces it.
(umask 077;mkdir -p "$vdir/$vver" "${vlog%/*}" "$vstate") 2>/dev/null || true
if [ -d "$vdir" ] && ! why=$(safe "$vdir"); then m unsafe "$why"; exit 0; fi
if [ -f "$vbin" ] && printf %s "$agent" | cmp -s - "$vbin"; then m vizier-install 0 present "$vbin"
elif { printf %s "$agent" >"$vbin.tmp" && mv -f "$vbin.tmp" "$vbin"; } 2>/dev/null
then m vizier-install 0 installed "$vbin"
else m vizier-install 1 "cannot write $vbin"; exit 0; fi
held=; hver=; hboot=; boot=; hsup=
{ read -r held <"$vstate/lock/pid"; } 2>/dev/null || true
{ read -r hver <"$vstate/lock/version"; } 2>/dev/null || true
{ read -r hboot <"$vstate/lock/boot"; read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null || true
{ read -r hsup <"$vstate/supervisor"; } 2>/dev/null || true
# The supervisor's pid names a live process of this boot (a lock left by the last boot is stale).
live() { [ -n "$held" ] && kill -0 "$held" 2>/dev/null && [ "${hboot:-$boot}" = "$boot" ]; }
# Running as it should: this version, under a supervisor on record (one that an older driver
# started, without a record, is restarted when castrad sent the supervisor set-up).
if live && [ "$hver" = "$vver" ] && { [ -n "$hsup" ] || [ -z "$vs" ]; }; then how="running ${hsup:-(supervisor not recorded)}"
else
  how=started
  if live; then sh "$vbin" stop "$vstate" || true; how=restarted; [ "$hver" = "$vver" ] || how="$how (was $hver)"; fi
  # Not the new agent's pid: wait for it below.
  printf "" 2>/dev/null >"$vstate/agent.pid" || true
  sup=; why="castrad sent no supervisor set-up: it had seen the agent running"
  [ -z "$vs" ] || eval "$vs"
  if [ -z "$sup" ]; then
    if command -v setsid >/dev/null; then setsid sh "$vbin" supervise "$vstate" "$vlog" </dev/null >/dev/null 2>&1 &
    else nohup sh "$vbin" supervise "$vstate" "$vlog" </dev/null >/dev/null 2>&1 & fi
    sup="in a respawn loop ($why; a reboot ends it until the next run)"
  fi
  printf "%s\n" "$sup" 2>/dev/null >"$vstate/supervisor" || true
  how="$how $sup"
fi
m vizier-enable 0 "$how"
i=0; banner=; limit=20
if [ "${how%% *}" != running ]; then
  # A just-started agent gets 5 s, first to name itself (cheap to check), then to answer.
  limit=50
  while [ ! -s "$vstate/agent.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; i=$((i/2))
fi
while [ $i -lt $limit ]; do banner=$(sh "$vbin" banner "$vstate" 2>/dev/null) && break; banner=; i=$((i+1)); sleep 0.1; done
m vizier-log "$vlog"; tail -c 16384 "$vlog" 2>/dev/null || true; m vizier-log-end
if [ -z "$banner" ]; then m vizier-handshake 1 "no banner from $vbin within $((limit / 10)) s"; exit 0; fi
m vizier-handshake 0; printf "%s\n" "$banner"
[ -d "$dir" ] || (umask 077;mkdir -p -- "$dir")
if ! why=$(safe "$dir"); then m unsafe "$why"; exit 0; fi
cd -- "$dir"
block; envs=$out
# One run at a time in remote_dir: one that castrad lost (it was killed) may still be going.
# Its lock names its pid; a dead holder's lock is taken over, a live one waited for 10 s.
i=0
until mkdir .castra-run 2>/dev/null; do
  o=$(cat .castra-run/pid 2>/dev/null)
  if [ -n "$o" ] && ! kill -0 "$o" 2>/dev/null; then rm -rf .castra-run; continue; fi
  if [ $i -ge 100 ]; then m connect 1 "${o:-?}"; exit 0; fi
  i=$((i+1)); sleep 0.1
done
echo $$ >.castra-run/pid; trap "rm -rf .castra-run" EXIT
m connect 0
if [ -e payload ] || [ -e "$script" ]; then rm -rf -- payload "$script"; fi
tar -x -f -
m transfer
set +e
# The script's stderr is bracketed on stderr, so castrad reads all of it before it decides
# apply from the marker on stdout (the two streams reach it independently). Each marker
# starts a line of its own, as on stdout: glued to a last line without a newline, castrad's
# 64 KiB line cap could cut it in two (castrad drops the empty line this may make).
e() { printf "\nCASTRA-%s %s\n" "$nonce" "$1" >&2; }
e script
(eval "$envs"; exec "$@") </dev/null
rc=$?
e script-end
m apply $rc
[ $rc -eq 0 ] || exit 0
if [ -n "$vcmd" ]; then (eval "$envs"; exec sh -c "$vcmd") </dev/null; rc=$?; m verify-command $rc; [ $rc -eq 0 ] || exit 0; fi
if [ -n "$vpath" ]; then if [ -e "$vpath" ]; then m verify-path 0; else m verify-path 1; exit 0; fi; fi
rm -rf .castra-run; trap - EXIT
m done
[ -z "$every" ] || exec sh "$vbin" watch "$vstate" "$every" </dev/null
