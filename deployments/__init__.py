"""Work pools, job templates, dashboards and the serve entry point."""
