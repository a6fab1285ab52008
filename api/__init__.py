"""REST blueprints: auth, exchange keys, account snapshots, orders, admin."""
