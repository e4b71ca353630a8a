// Wrapper module pinning the upstream projects whose CustomResourceDefinitions the examples under
// examples/ and the chart's monitoring objects are validated against (tests/upstream_crds.py reads
// each CRD from the module's directory after `go mod download -json <module>@<version>`). Nothing
// here is built or imported.
// To upgrade: change the version, then `go mod download <module>` here to refresh go.sum.
module vibe.dev/hack/upstream-crds

go 1.26.5

require (
	// Prometheus Operator: example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,
	// podmonitors,prometheusrules}.yaml (the chart's monitoring objects)
	github.com/prometheus-operator/prometheus-operator v0.85.0
	// LeaderWorkerSet: config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml
	sigs.k8s.io/lws v0.9.0
)
