// Package crashtest holds drover's crash tests: they build the drover
// binary, run workflows in child processes, kill those processes with
// SIGKILL at chosen moments, resume the jobs and check the store and the
// workflows' side effects against the durability model of SPEC 2.1: a
// committed step never runs again, a step that was not committed runs
// again (at least once), and every job completes.
//
// The package has no code of its own besides its tests.
package crashtest
