// Command drover runs durable, resumable workflows for operations work
// across many machines. See the README and docs/.
package main

import (
	"context"
	"os"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/local"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == local.SuperviseArg {
		os.Exit(local.Supervise(os.Args[2:]))
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
