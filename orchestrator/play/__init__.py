"""The editor-and-preview page (`/play`): what a person sees, served by `velocity serve`.

Kept free of imports, so `orchestrator.play.headless` loads without the service (and
without Prefect, whose settings must be read only after the stack sets PREFECT_API_URL).
"""
