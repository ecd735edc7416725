// Package fleettest holds drover's end-to-end tests of fan-out over SSH
// (SPEC section 3): they build the drover binary, start real OpenSSH
// servers on loopback addresses (internal/remote/sshtest), and drive the
// binary as a user would, with a private HOME holding ~/.ssh/known_hosts
// and ~/.ssh/id_ed25519. They check what users see (exit codes, drover
// show, output) and what happened on the hosts (files written by remote
// commands, the hosts' process table).
//
// The package has no code of its own besides its tests.
package fleettest
