"""The Kubernetes operator front end: kopf watches KubeRay RayJobs and drives the admission engine.

``rayqueue operator`` runs it; ``rayqueue.scheduler.operator.handlers.Operator`` runs one instance in the
current event loop. Nothing is imported here so that ``rayqueue --help`` stays fast (kopf is heavy).
"""
