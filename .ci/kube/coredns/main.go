// coredns: the cluster DNS kubeadm deploys, with only the plugins its Corefile names (kubeadm's
// default: errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload,
// loadbalance) and log, for debugging. CoreDNS's own main links some sixty plugins, cloud DNS
// providers among them; these are what a KIND cluster without internet uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The order of a server's plugins is this list's (CoreDNS's own order, cut to what is linked).
	dnsserver.Directives = []string{"reload", "ready", "health", "prometheus", "errors", "log",
		"loadbalance", "cache", "kubernetes", "loop", "forward"}
}

func main() {
	coremain.Run()
}
