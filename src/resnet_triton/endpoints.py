"""Where the server listens and what its restricted APIs need: shared by server and client.

A small module of its own so that the client side names the admin header and
default ports without importing the server launcher.
"""

# The local server (Triton 2.51) predates the fixes for CVE-2025-23310/23311 and later
# bulletins: it listens on loopback unless asked otherwise.
LOOPBACK = "127.0.0.1"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

# Management APIs that change or expose server state need ADMIN_HEADER (and pass the
# fence of docker/nginx/ only with it); inference,
# health, metadata, model config, statistics and metrics stay open.
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"
ADMIN_HEADER = "admin-key"
# Where clients find the inference key the proxy in front asks for (SECURITY.md).
API_KEY_ENV = "RESNET_TRITON_API_KEY"
