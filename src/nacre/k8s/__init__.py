"""Kubernetes parts: the SGX EPC device plugin (kubelet device-plugin API v1beta1), the node agent
that publishes ``nacre.dev/`` node labels, and the admission webhook for confidential sandboxed pods.
"""
