// Package remote runs drover's steps on other machines over SSH: a
// connection manager, an executor of supervised commands (sh) and a copier
// over SFTP (copy). *Manager implements engine.Executor and engine.Copier.
//
// # Connections
//
// Hosts are resolved as ssh(1) would: the inventory's address, port and
// user first, then ~/.ssh/config (Host patterns, HostName, User, Port,
// IdentityFile, IdentitiesOnly, ProxyJump), then defaults. Keys come from
// ssh-agent (SSH_AUTH_SOCK), so encrypted keys work through it, and from
// unencrypted identity files. Host keys are always verified against
// known_hosts; an unknown host is refused unless AcceptNewHostKeys is set,
// in which case its key is recorded and logged; a changed key is always
// refused, naming the file and line of the old one.
//
// Connections are pooled by (address, port, user, credentials). Each
// carries up to MaxSessionsPerConn sessions; each host gets at most
// MaxConnsPerHost connections; at most MaxHandshakes connection set-ups
// run at once across hosts. Requests beyond those limits wait in arrival
// order. A connection idle through two sweeps is closed; one that breaks
// (keepalive unanswered, session refused, connection reset) is replaced.
//
// # Supervised commands
//
// Exec does not run the command in its SSH session. A small POSIX sh
// wrapper starts it in its own session and process group (setsid) with a
// per-step directory on the host, $HOME/.drover/run/JOB/STEP, holding its
// pid, stdout, stderr and exit code, and the SSH session only follows
// that directory. So:
//
//   - a connection that drops mid-command is re-dialled and the call
//     re-attaches, without running the command again;
//   - after a controller crash, the resumed job's Exec for the same job and
//     step key re-attaches to the command if it still runs, or collects its
//     recorded result if it finished, instead of running it a second time;
//   - cancelling the context (stop, step timeout) sends SIGTERM, then
//     SIGKILL, to the command's process group on the host;
//   - a second Exec for a step whose result this process already returned
//     is a retry, and runs the command afresh.
//
// The launch and the helpers (stop, Forget, copy's checks) do not open a
// session each: a connection keeps long-lived agent sessions, each a
// small sh loop that serves one request at a time with every frame
// marked by a random nonce, and hands out an idle one; parallel calls to
// one host open more, within MaxSessionsPerConn. A session costs the host
// a fork, a login and a channel; an agent request costs a subshell. An
// agent whose session ends, or whose call is cancelled, is discarded; the
// requests are idempotent, so the call goes on with another agent.
//
// Forget removes a job's step directories once the job has ended.
// Detach, for a controller that shuts down meaning to resume, drops the
// connections and leaves the commands running.
//
// The package imports engine for the seam's types only.
package remote
