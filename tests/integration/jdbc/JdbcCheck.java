// What a JDBC client (a BI tool) does over tidelake's pg-wire endpoint: one prepared
// statement executed 8 times (from the 5th execution on, the PostgreSQL driver switches to a
// named server-side statement with binary results), the result's column types, a GROUP BY
// over the lake, then the table browser's metadata call.
// Usage: java -cp postgresql.jar JdbcCheck.java JDBC_URL
import java.sql.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0])) {
            String sql = "SELECT id, ts, paid, price, region, qty, CAST(price AS DECIMAL(10, 2)) AS amount,"
                + " CAST(ts AS DATE) AS day FROM lake.sales WHERE id = ?";
            try (PreparedStatement s = c.prepareStatement(sql)) {
                for (int i = 1; i <= 8; i++) {
                    s.setLong(1, i);
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) {
                            System.out.println(r.getLong(1) + "|" + r.getTimestamp(2) + "|" + r.getBoolean(3)
                                + "|" + r.getDouble(4) + "|" + r.getString(5) + "|" + r.getInt(6)
                                + "|" + r.getBigDecimal(7) + "|" + r.getDate(8));
                        }
                    }
                }
            }
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery(sql.replace("?", "0"))) {
                ResultSetMetaData m = r.getMetaData();
                for (int i = 1; i <= m.getColumnCount(); i++) {
                    System.out.println("column|" + m.getColumnName(i) + "|" + m.getColumnTypeName(i));
                }
            }
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery(
                     "SELECT region, count(*) FROM lake.sales GROUP BY region ORDER BY region")) {
                while (r.next()) {
                    System.out.println("group|" + r.getString(1) + "|" + r.getLong(2));
                }
            }
            try (ResultSet r = c.getMetaData().getTables(null, null, "%", new String[] {"TABLE"})) {
                while (r.next()) {
                    System.out.println("table|" + r.getString("TABLE_SCHEM") + "." + r.getString("TABLE_NAME"));
                }
            }
        }
    }
}
