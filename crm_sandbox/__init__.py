"""Local emulators of the Pipefy and Pipedrive APIs (``crm-sandbox``)."""
