"""Values the integration tests plant so they can prove none of them leaks."""

SUBSCRIPTION_KEY = "test-subscription-key-5f1c9e2a"  # the emulator's key in these tests (not a real secret)
API_KEY = "integration-api-key"
ORIGIN = "http://localhost:3000"
