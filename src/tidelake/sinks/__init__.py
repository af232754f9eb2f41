"""Where flows land: lake, SQL tables, topics, the console."""
