package remote

import (
	"crypto/sha256"
	"encoding/hex"
	"path"
	"strings"
)

// The scripts below run on targets under /bin/sh and use only POSIX sh
// and utilities every Unix has (tail, head -c, wc, sleep with fractions),
// plus setsid or perl to detach when present. On the hosts' side a
// session costs far more CPU than anything a script does (sshd forks,
// logs in, sets up the channel), and after it every fork counts: so one
// long-lived agent per session serves request after request, and the
// scripts lean on builtins (read, test, printf, kill) wherever a utility
// is not needed.
//
// A supervised command owns a step directory D:
//
//	token   the launch token of the Exec call that started it, then the
//	        kernel boot id when it started (pids do not survive a
//	        reboot); created with O_EXCL (set -C), it is the lock that
//	        starts D's command at most once
//	cmd     the command, with its environment exported first
//	in      its stdin, when it has one
//	pid     the process id, also its process group and session id
//	out err its output
//	rc      its exit status, written last
//	killed  written by a stop: the token of the stopped launch
//	wake    pid of a re-attached streamer's sleep, killed by the runner
//	        when it finishes so the result comes back at once (the
//	        launch that started the runner is its parent, and learns of
//	        its end by SIGCHLD)
//
// Every file created costs (ext4 allocating an inode showed up as a third
// of a step's CPU here), so there are no more of them than that.

// agentScript is the program of an agent session. It reads requests from
// stdin, one at a time:
//
//	NONCE OP STDIN-SIZE
//	ARGS, shell-quoted, over as many lines as they need
//	NONCE
//	STDIN-SIZE bytes of stdin for the request
//
// and answers each on stdout with "NONCE S|A|D|K|L|E...", the body, the
// trailer records of launchScript (helpers: "NONCE R status"), then
// "NONCE Z"; on stderr with "NONCE" on a line, the body's stderr, then
// "NONCE" again. The nonce is random per request, so neither a
// command's output nor its arguments can forge a frame. OP is L
// (launch), K (kill), F (forget) or X (evaluate the script in the first
// argument with the others as $1...). Each request runs in a subshell,
// so nothing it sets or exits reaches the loop.
//
// The agent's stdin goes on after a request's stdin, so that must be read
// exactly: GNU head -c reads no further than asked; elsewhere dd bs=1
// does (slowly).
//
// Argument: the run directory, where stdin is kept until its step
// directory exists.
const agentScript = `
R=$1 H=
umask 077
L() {` + launchScript + `}
K() {` + killScript + `}
F() {` + forgetScript + `}
X() { s=$1; shift; eval "$s"; }
while IFS= read -r h; do
	n=${h%% *} r=${h#* }
	op=${r%% *} isz=${r#* }
	a= l=
	while IFS= read -r l; do
		[ "$l" = "$n" ] && break
		a="$a$l
"
	done
	[ "$l" = "$n" ] || exit 0
	eval "set -- $a"
	in=
	if [ "$isz" -gt 0 ]; then
		[ -d "$R" ] || mkdir -p "$R" 2>/dev/null
		in="$R/.in.$n"
		if [ -z "$H" ]; then
			H=dd
			case $(head --version 2>/dev/null) in *GNU*) H=head ;; esac
		fi
		if ! printf '' 2>/dev/null > "$in"; then
			in=!
			if [ $H = head ]; then head -c "$isz" > /dev/null; else dd bs=1 count="$isz" of=/dev/null 2>/dev/null; fi
		elif [ $H = head ]; then
			head -c "$isz" > "$in" || exit 1
		else
			dd bs=1 count="$isz" of="$in" 2>/dev/null || exit 1
		fi
	fi
	printf '%s\n' "$n" >&2
	case $op in
	L) ( L "$@" ) 3>&2 2>/dev/null ;;
	K|F|X) printf '%s S\n' "$n"; ( "$op" "$@" ) 3>&2 < /dev/null; printf '%s R %s\n' "$n" "$?" ;;
	*) printf '%s E unknown request %s\n' "$n" "$op" ;;
	esac
	case $in in ""|!) ;; *) [ -e "$in" ] && rm -f "$in" ;; esac
	printf '%s Z\n' "$n"
	printf '%s\n' "$n" >&2
done
`

// launchScript starts the command in D unless it already runs or ran,
// then streams its output from the given offsets and prints a trailer.
// It is the agent's L request, run in a subshell whose stderr is
// discarded; fd 3 is the request's stderr, $in the file holding its
// stdin (! when it could not be written).
//
// Arguments: D nonce token fresh out-offset err-offset stdin-size command.
// Stdout carries "nonce S|A|D" (started, attached to a running command,
// done already), the command's stdout, then "nonce R code", or instead
// "nonce K" (stopped), "nonce L" (lost) or "nonce E message"; fd 3 the
// command's stderr.
//
// With fresh=1 (the caller already delivered a result for this step, so
// this is a retry), a directory left by another launch is discarded.
// Otherwise an existing directory is attached to: that is how a resumed
// job finds the command its crashed controller started.
const launchScript = `
d=$1 n=$2 tok=$3 fresh=$4 oo=$5 oe=$6 isz=$7 cmd=$8
fail() { printf '%s E %s\n' "$n" "$*"; exit 0; }
if [ "$isz" -gt 0 ]; then
	[ "$in" = ! ] && fail "cannot write the command's stdin under ${d%/*/*} on the host (disk full?)"
	[ $(($(wc -c < "$in"))) -eq "$isz" ] || fail "stdin arrived incomplete"
fi
bootid() { b=; read -r b < /proc/sys/kernel/random/boot_id 2>/dev/null; }
alive() {
	p=; read -r p < "$d/pid" 2>/dev/null; [ -n "$p" ] || return 1
	ot= ob=; { read -r ot; read -r ob; } < "$d/token" 2>/dev/null
	# A directory from an older drover keeps the boot id apart.
	[ -z "$ob" ] && [ -s "$d/boot" ] && read -r ob < "$d/boot"
	if [ -n "$ob" ]; then
		bootid
		[ "$ob" = "$b" ] || return 1
	fi
	kill -s 0 "$p" 2>/dev/null
}
discard() {
	if alive; then kill -s KILL -- "-$p" 2>/dev/null || kill -s KILL "$p" 2>/dev/null; fi
	rm -rf "$d"
}
detach() {
	if command -v setsid >/dev/null 2>&1; then exec setsid "$@"; fi
	if command -v perl >/dev/null 2>&1; then exec perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV or die "exec: $!"' "$@"; fi
	exec "$@"
}
start() {
	[ -d "$d" ] || mkdir -p "$d" 2>/dev/null || fail "cannot create directory $d on the host"
	set -C
	bootid
	printf '%s\n%s\n' "$tok" "$b" 2>/dev/null > "$d/token" || { set +C; return 1; }
	set +C
	printf '%s\n' "$cmd" > "$d/cmd"
	[ -n "$in" ] && mv "$in" "$d/in"
	: > "$d/out"
	: > "$d/err"
	# pid and rc are each written by one small write(2): readers test
	# them with -s, so they never see a partial record.
	# The command runs in a subshell of the runner that sources it, as
	# "/bin/sh $d/cmd" would run it ($0 the file, no arguments, no
	# variable of the runner's) but without another exec of sh.
	detach /bin/sh -c '
		d=$1
		echo $$ > "$d/pid"
		i=/dev/null; [ -e "$d/in" ] && i=$d/in
		( exec < "$i" > "$d/out" 2> "$d/err"; set --; unset d i; . "$0" )
		echo $? > "$d/rc"
		w=; read -r w < "$d/wake" 2>/dev/null && kill "$w" 2>/dev/null
		exit 0' "$d/cmd" "$d" < /dev/null > /dev/null 2>&1 3>&- &
	r=$!
	return 0
}
if [ -d "$d" ]; then
	k=; [ -s "$d/killed" ] && read -r k < "$d/killed"
	ot=; read -r ot < "$d/token" 2>/dev/null
	if [ -n "$k" ]; then
		if [ "$k" = "$tok" ]; then printf '%s K\n' "$n"; exit 0; fi
		discard
	elif [ "$fresh" = 1 ] && [ "$ot" != "$tok" ]; then
		discard
	fi
fi
r=
if start; then
	mode=S
else
	i=0
	while [ ! -s "$d/pid" ] && [ ! -s "$d/rc" ] && [ ! -e "$d/killed" ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
	if [ -e "$d/killed" ]; then printf '%s K\n' "$n"; exit 0; fi
	if [ ! -s "$d/pid" ] && [ ! -s "$d/rc" ]; then
		# The launch that created D died before starting the command.
		rm -rf "$d"
		start || fail "cannot start the command in $d"
		mode=S
	elif [ -s "$d/rc" ]; then
		mode=D
	else
		mode=A
	fi
fi
printf '%s %s\n' "$n" "$mode"
# The runner kills the poll's sleep as soon as the command ends (wake),
# so a long first sleep costs a quick command no time and spares it a
# second fork of sleep.
t=0.2 np=0 w=
# A runner started here is this shell's child: its end interrupts the
# wait below, with no wake file.
[ -n "$r" ] && trap '[ -n "$w" ] && kill $w 2>/dev/null' CHLD
while :; do
	if [ -s "$d/rc" ]; then
		# Finished: the rest of each file is all there is, no need to
		# measure it first.
		[ -s "$d/out" ] && tail -c +$((oo+1)) "$d/out"
		[ -s "$d/err" ] && tail -c +$((oe+1)) "$d/err" >&3
		break
	fi
	if [ ! -d "$d" ] || [ -e "$d/killed" ]; then printf '%s K\n' "$n"; exit 0; fi
	if [ -s "$d/out" ]; then
		s=$(($(wc -c < "$d/out")))
		if [ "$s" -gt "$oo" ]; then tail -c +$((oo+1)) "$d/out" | head -c $((s-oo)); oo=$s; t=0.05; fi
	fi
	if [ -s "$d/err" ]; then
		s=$(($(wc -c < "$d/err")))
		if [ "$s" -gt "$oe" ]; then tail -c +$((oe+1)) "$d/err" | head -c $((s-oe)) >&3; oe=$s; t=0.05; fi
	fi
	if [ -s "$d/pid" ]; then
		if ! alive && [ ! -s "$d/rc" ]; then printf '%s L\n' "$n"; exit 0; fi
	else
		np=$((np+1))
		[ $np -gt 100 ] && { printf '%s L\n' "$n"; exit 0; }
	fi
	sleep $t < /dev/null > /dev/null 2>&1 3>&- & w=$!
	[ -n "$r" ] || echo $w > "$d/wake"
	[ -s "$d/rc" ] && kill $w 2>/dev/null
	wait $w 2>/dev/null
	w=
	case $t in 0.05) t=0.2 ;; 0.2) t=0.5 ;; *) t=1 ;; esac
done
rc=; read -r rc < "$d/rc"
printf '%s R %s\n' "$n" "$rc"
`

// killScript stops the command in D: it marks D killed with the stopped
// launch's token (so that launch, if it is still on its way, does not
// start it), sends SIGTERM to the process group, SIGKILL after the grace
// period (in tenths of a second), and clears D but the mark. It is the
// agent's K request.
//
// Arguments: D token grace.
const killScript = `
d=$1 tok=$2 g=$3
[ -d "$d" ] || mkdir -p "$d" 2>/dev/null
set -C
if printf '%s\n' "$tok" 2>/dev/null > "$d/token"; then
	set +C
	printf '%s\n' "$tok" > "$d/killed"
	exit 0
fi
set +C
printf '%s\n' "$tok" > "$d/killed.t" && mv "$d/killed.t" "$d/killed"
i=0
while [ ! -s "$d/pid" ] && [ ! -s "$d/rc" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ -s "$d/pid" ]; then
	read -r p < "$d/pid"
	kill -s TERM -- "-$p" 2>/dev/null || kill -s TERM "$p" 2>/dev/null
	i=0
	while kill -s 0 -- "-$p" 2>/dev/null && [ $i -lt "$g" ]; do sleep 0.1; i=$((i+1)); done
	kill -s KILL -- "-$p" 2>/dev/null
fi
rm -f "$d/out" "$d/err" "$d/in" "$d/cmd" "$d/rc" "$d/pid" "$d/boot" "$d/token" "$d/wake"
echo stopped
`

// forgetScript removes a job's step directories, killing first any
// command of the job still running (one a failed stop left behind). It
// is the agent's F request.
//
// Arguments: job directory.
const forgetScript = `
j=$1
[ -d "$j" ] || exit 0
b=; read -r b < /proc/sys/kernel/random/boot_id 2>/dev/null
for p in "$j"/*/pid; do
	[ -s "$p" ] || continue
	s=${p%/pid}
	ot= ob=; { read -r ot; read -r ob; } < "$s/token" 2>/dev/null
	[ -z "$ob" ] && [ -s "$s/boot" ] && read -r ob < "$s/boot"
	[ "$ob" = "$b" ] || continue
	k=; read -r k < "$p"
	kill -s KILL -- "-$k" 2>/dev/null
done
rm -rf "$j"
`

// statScript reports on a path for copy: "dir", "none", or "file HASH"
// with HASH empty when no sha256 tool is there.
//
// Arguments: path.
const statScript = `
f=$1
if [ -d "$f" ]; then echo dir; exit 0; fi
if [ ! -f "$f" ]; then echo none; exit 0; fi
# Hashing stdin: sha256sum escapes unusual file names in its output.
h=$( { sha256sum < "$f" || shasum -a 256 < "$f" || openssl dgst -sha256 -r < "$f"; } 2>/dev/null | cut -c1-64)
echo "file $h"
`

// shellCommand builds the exec request for script: the login shell (any
// Bourne-like shell) runs /bin/sh with the script and its arguments.
func shellCommand(script string, args ...string) string {
	var b strings.Builder
	b.WriteString("exec /bin/sh -c ")
	b.WriteString(shellQuote(script))
	b.WriteString(" drover")
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(shellQuote(a))
	}
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// safeName makes a path element of an id: readable when the id is, and
// unique through a hash suffix when characters had to be replaced.
func safeName(id string) string {
	var b strings.Builder
	changed := false
	for _, r := range id {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
			changed = true
		}
	}
	s := b.String()
	if len(s) > 80 {
		s, changed = s[:80], true
	}
	if s == "" || strings.HasPrefix(s, ".") {
		s, changed = "_"+s, true
	}
	if changed {
		sum := sha256.Sum256([]byte(id))
		s += "-" + hex.EncodeToString(sum[:4])
	}
	return s
}

func (m *Manager) jobDir(jobID string) string {
	return path.Join(m.opts.RunDir, safeName(jobID))
}

func (m *Manager) stepDir(jobID, stepKey string) string {
	return path.Join(m.jobDir(jobID), safeName(stepKey))
}
