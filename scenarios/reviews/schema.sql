-- The app's reviews table (the reference's PostgreSQL table behind the FastAPI endpoint).
CREATE TABLE IF NOT EXISTS reviews (
  review_id TEXT PRIMARY KEY,
  product TEXT NOT NULL,
  rating INTEGER NOT NULL,
  text TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
