// The Dockerfile frontend as an image, for engines whose built-in one predates heredocs (Docker 20.10 has
// syntax 1.2): a Dockerfile names it in its `# syntax=` line, and the engine runs it from its local store.
package main

import (
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/builder"
	"github.com/moby/buildkit/frontend/gateway/grpcclient"
	"github.com/moby/buildkit/util/appcontext"
)

func main() {
	if err := grpcclient.RunFromEnvironment(appcontext.Context(), builder.Build); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
