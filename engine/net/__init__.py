"""Transport helpers shared by sources, destinations, the sandbox and the SFTP server.

This package sits below every component: it imports no component (no source, no destination),
no store, no pipeline and no domain code; only :mod:`engine.codecs`, :mod:`engine.errors`,
:mod:`engine.spec`, :mod:`engine.model` and :mod:`engine.templating`.

* :mod:`engine.net.endpoints`: Twisted listen strings, their spec check, server endpoints
  with TLS and mutual TLS, ``peer_name``;
* :mod:`engine.net.tls`: client-side TLS (CA bundles, the HTTPS policy, connection creators);
* :mod:`engine.net.mllp`: MLLP framing, server side and client side;
* :mod:`engine.net.sftp`: the SFTP client, its connection spec fields, outage tracking and an
  atomic uploader;
* :mod:`engine.net.files`: atomic local file writes and file extensions of content types.
"""
