# Vizier's supervisor, chosen and set up in the guest when the agent is to be started or
# restarted: evaluated by pipeline/driver.sh, to which castrad sends it only then (on stdin,
# after the agent's text; a run that finds the agent running never reads it). The first of
# these that works:
#
# 1. systemd's system manager, unit castra-vizier (WantedBy=multi-user.target): as root, or
#    through `sudo -n` for a login user with passwordless sudo (castrad's cloud-init seed gives
#    its user that). The unit runs the agent as the login user (User=<uid>), so its files and
#    log stay that user's, as they are under any other supervisor;
# 2. systemd's user manager (a user unit, WantedBy=default.target) for a user without sudo,
#    if lingering is on or the user may turn it on (`loginctl enable-linger`): the user's
#    manager then starts at boot, without a login;
# 3. OpenRC, as root.
#
# When one is set up and has started the agent, `sup` says which and why (the vizier-enable
# step's detail); otherwise `why` says why none could be, and the driver starts its respawn
# loop, which a reboot ends. A login environment with CASTRA_VIZIER_SUPERVISOR=loop asks for
# the respawn loop (the test suite's loopback sshd sets it: its "guest" is the host itself).
#
# Uses the driver's vbin, vstate, vlog, `root` and `uid` (set by `root`). Paths reach a unit
# file quoted for systemd (vz_q) or for the shell (vz_sh), and commands only as arguments.
vz_q() { printf '"%s"' "$(printf %s "$1" | sed 's/[\\"]/\\&/g; s/%/%%/g; s/\$/$$/g')"; }
vz_sh() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
vz_cut() { printf %s "$1" | tr -s "\n" " " | cut -c1-200; }
vz_unit() {
  printf "[Unit]\nDescription=Castra Vizier\n[Service]\n"
  [ -z "$vz_user" ] || printf "User=%s\n" "$vz_user"
  printf "ExecStart=/bin/sh %s supervise %s %s\nRestart=always\nRestartSec=1\n[Install]\nWantedBy=%s\n" "$(vz_q "$vbin")" "$(vz_q "$vstate")" "$(vz_q "$vlog")" "$1"
}
vz_s=-; vz_scope=; vz_user=; vz_e=
if [ "${CASTRA_VIZIER_SUPERVISOR:-}" = loop ]; then why="CASTRA_VIZIER_SUPERVISOR=loop in the login environment"
elif ! [ -d /run/systemd/system ] || ! command -v systemctl >/dev/null; then
  if root && command -v openrc-run >/dev/null && [ -d /etc/init.d ]; then vz_s=openrc
  elif root; then why="neither systemd nor OpenRC in the guest"
  else why="no systemd in the guest (OpenRC only as root)"; fi
elif root; then vz_s=; sup="under systemd (system unit castra-vizier, as root)"
elif command -v sudo >/dev/null && sudo -n true </dev/null >/dev/null 2>&1; then
  vz_s="sudo -n"; vz_user=$uid
  sup="under systemd (system unit castra-vizier as uid $uid, set up through passwordless sudo)"
elif ! systemctl --user show-environment </dev/null >/dev/null 2>&1; then
  why="no passwordless sudo, and no systemd user manager for this login"
elif [ "$(loginctl show-user "$uid" --property=Linger --value </dev/null 2>/dev/null)" = yes ] || vz_e=$(loginctl --no-ask-password enable-linger </dev/null 2>&1); then
  vz_s=; vz_scope=--user; sup="under systemd (user unit castra-vizier, lingering; no passwordless sudo)"
else why="no passwordless sudo, and lingering is off (loginctl enable-linger: $(vz_cut "$vz_e"))"; fi
case $vz_s in
-) sup= ;;
openrc)
  vz_e="$(vz_sh "$vbin") supervise $(vz_sh "$vstate") $(vz_sh "$vlog")"
  vz_f=/etc/init.d/castra-vizier
  if ! { printf '#!/sbin/openrc-run\ncommand=/bin/sh\ncommand_args=%s\ncommand_background=yes\npidfile=/run/castra-vizier.pid\n' "$(vz_sh "$vz_e")" >"$vz_f" && chmod 755 "$vz_f"; } 2>/dev/null; then why="cannot write $vz_f"
  else
    rc-update add castra-vizier default </dev/null >/dev/null 2>&1 || true
    if vz_e=$(rc-service castra-vizier restart </dev/null 2>&1); then sup="under OpenRC (service castra-vizier, as root)"
    else why="OpenRC could not start it: $(vz_cut "$vz_e")"; fi
  fi ;;
*)
  if [ -n "$vz_scope" ]; then vz_f=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user; vz_t=default.target
  else vz_f=/etc/systemd/system; vz_t=multi-user.target; fi
  # $vz_s and $vz_scope are this file's own words ("sudo -n", "--user"), split on purpose.
  if ! vz_e=$({ vz_unit $vz_t | $vz_s sh -c 'umask 022; mkdir -p "$1" && cat >"$1/castra-vizier.service.tmp" && mv -f "$1/castra-vizier.service.tmp" "$1/castra-vizier.service"' sh "$vz_f" &&
    $vz_s systemctl $vz_scope daemon-reload && $vz_s systemctl $vz_scope enable castra-vizier &&
    $vz_s systemctl $vz_scope restart castra-vizier; } </dev/null 2>&1); then
    why="systemd could not start it: $(vz_cut "$vz_e")"; sup=
  fi ;;
esac
