"""Values the tests plant so they can prove none of them leaks (``support/leak_watch.py`` looks for every one of
them in every log line, answer, event and webhook of the session)."""

SUBSCRIPTION_KEY = "test-subscription-key-5f1c9e2a"  # the emulator's key in these tests (not a real secret)
ROTATED_SUBSCRIPTION_KEY = "rotated-subscription-key-7c1e"  # the vendor's key after a rotation
UNIT_SUBSCRIPTION_KEY = "sk-SECRET-5f0c1d2e3a4b"  # the Flux client's and secrets adapter's unit tests
UNIT_ROTATED_SUBSCRIPTION_KEY = "sk-SECRET-rotated-9e8d7c"
API_KEY = "integration-api-key"
ORIGIN = "http://localhost:3000"

SUBSCRIPTION_KEYS = (SUBSCRIPTION_KEY, ROTATED_SUBSCRIPTION_KEY, UNIT_SUBSCRIPTION_KEY, UNIT_ROTATED_SUBSCRIPTION_KEY)
