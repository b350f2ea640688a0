// Command etcd is the upstream etcd server entrypoint, built from the pinned
// go.etcd.io/etcd/server/v3 module. The upstream main package lives in the
// go.etcd.io/etcd/v3 root module, which the module proxy does not serve for
// recent releases, so we re-create its three-line main here.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
