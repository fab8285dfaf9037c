//go:build tools

// Programs built from other modules' own main packages (go build helm.sh/helm/v3/cmd/helm ...):
// importing them here keeps them in go.mod, at versions whose Kubernetes libraries are ours.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
