"""The API's routes, one Powertools ``Router`` per resource, each included by the entry point (``api_handler``).

A route module holds its routes' paths, parameters and operation descriptions, and calls the service: no
business logic (the ``imagegen`` layer), no response documentation beyond a name (``api_openapi``), no error
mapping (``api_errors``). No ``from __future__ import annotations`` in these modules: Powertools reads the route
signatures at run time to validate and to build the OpenAPI document.
"""
