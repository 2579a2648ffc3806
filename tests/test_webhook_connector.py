from connectors.testing import conformance_suite
from connectors.webhook.kit import WebhookKit

TestWebhookConformance = conformance_suite(WebhookKit())
