"""Static files of the sleep-journal SMART app (``GET /journal/``, ``service.api.journal``).

Plain HTML, CSS and JavaScript: nothing to build, nothing fetched from a CDN. The one third-party
file is the SMART client library, vendored unmodified:

* ``fhirclient-2.6.3.min.js`` is ``build/fhir-client.pure.min.js`` from the npm package
  ``fhirclient@2.6.3`` (``npm pack fhirclient@2.6.3``; Apache-2.0, SMART Health IT / Boston
  Children's Hospital), sha256
  ``658dec434e308a6ba682158f1e94bfaa0f600bb500e78443369bfe7818133d90``. Its licence and the
  notice of the code it bundles are in ``fhirclient-LICENSE.txt``. ``tests/journal`` checks the
  hash, so an update is deliberate: take the same file from the new version, rename, update the
  hash here and in the test.
"""
