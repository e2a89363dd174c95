"""Pipefy's GraphQL API without Airflow: settings, documents, values, errors, pagination, the gql
transport and the clients (``clients.pipefy.client.PipefyClient`` / ``PipefyAsyncClient``).

Nothing is imported here: ``get_provider_info`` reads ``clients.pipefy.policy`` while Airflow loads its
configuration, before the client's modules can be imported."""
