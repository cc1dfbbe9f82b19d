"""What the predecessors (pynba 0.4.3 and 0.5.5) had and this project keeps for their code.

The real code for their APIs lives here; their old module paths (``pynba.middleware``,
``pynba.reporter``, ``pynba.wsgi.ctx``...) are one-line re-exports of it. The engine
(``pynba_exporter``) never imports this package, and neither does the request path: a
predecessor's argument is turned into what the core takes (a reporter into a transport) once,
where the entry point is made.
"""
