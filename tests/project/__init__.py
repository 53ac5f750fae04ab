"""Project-wide rules: lint, layering, GitOps manifests, image digests."""
