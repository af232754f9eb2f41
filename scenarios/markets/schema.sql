-- The trades the market API reports, one row per trade (SQLite and MariaDB alike).
CREATE TABLE IF NOT EXISTS ticks (
  trade_id BIGINT PRIMARY KEY,
  symbol VARCHAR(16) NOT NULL,
  price DOUBLE NOT NULL,
  volume DOUBLE NOT NULL,
  ts BIGINT NOT NULL
);
