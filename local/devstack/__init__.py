"""The local stack (``make run``): development tooling only, never deployed or packaged into the artefact.

What lives here, by part:

- the stack and its terminal: ``stack`` (starts everything), ``__main__``, ``logs``, ``events``, ``loadgen``;
- the template, read once for everyone: ``template`` (the repository's one CloudFormation loader and its
  intrinsics; ``tests/template`` reads ``template.yaml`` through it too), ``template_resources`` (what seeding
  takes from the template), ``routes`` (the API's routes and their resolution);
- the local API Gateway: ``gateway`` (the server, API keys, throttling, invocation), ``apigw_events`` and
  ``apigw_responses`` (the pure translations between HTTP and the Lambda proxy integration);
- the local AWS: ``aws`` and ``moto_server`` (moto, seeded from the template), ``sqs_poller`` (the SQS event
  source mapping);
- the stand-ins AWS or the vendor cannot provide here: ``flux_emulator``, ``moderation_standin`` (Bedrock
  Guardrails' ``ApplyGuardrail``); the browser side: ``console``; ``serving`` (the serve-in-a-thread lifecycle
  these HTTP servers and the gateway share);
- the built artefact (``make run-built``): ``artefact``, ``artefact_probe``, ``runtime``, ``lambda_bootstrap``,
  ``lambda_context``.

What does not: the service's own code (``functions/``, ``layers/shared/imagegen``) and the CLI (``cli/``).
"""
