"""llmtune's web UI: a Gradio page that builds, previews, starts and watches ``llmtune`` runs.

Started by ``llmtune webui`` (or ``python -m llmtune.webui``). The page runs
``llmtune train``/``llmtune eval`` as detached processes and shows them from their files; see
``docs/webui.md``.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def launch_ui(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False, block: bool = True):
    """Serve the page on ``host:port`` (loopback unless asked otherwise); ``share`` opens a Gradio link."""
    from llmtune.webui.app import create_app  # gradio: only when the page is served

    if share or host not in ("127.0.0.1", "localhost", "::1"):
        # The page starts processes and writes files as this user: say so before anyone else can reach it.
        print(
            f"llmtune webui: reachable beyond this machine ({'share link' if share else host}); anyone who can "
            "open it can start runs and write files as this user",
            flush=True,
        )
    app = create_app()
    app.queue()
    app.launch(server_name=host, server_port=port, share=share, inbrowser=False, prevent_thread_lock=not block)
    return app
