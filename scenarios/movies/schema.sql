-- The reference document's stream_db tables (identifiers quoted so PostgreSQL keeps "movieId").
CREATE TABLE IF NOT EXISTS movies (
  "movieId" INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  genres TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
  user_id INTEGER,
  "movieId" INTEGER NOT NULL,
  rating REAL NOT NULL,
  "timestamp" INTEGER NOT NULL,
  event_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
