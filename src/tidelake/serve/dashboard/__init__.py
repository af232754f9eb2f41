"""The live dashboard: a Streamlit app over the query layer and the flows' metrics.

``launch.launch`` starts it as a child process; ``launch.serve`` runs it in the
foreground (``tidelake dashboard PIPELINE``). The app itself is ``app.py``, a
Streamlit script. Nothing is imported here, so the launcher child starts fast.
"""
