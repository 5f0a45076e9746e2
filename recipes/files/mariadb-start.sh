#!/bin/sh
# Entry point of the reemo/mariadb image: initialise the data folder on first start (what
# the Debian maintainer scripts would have done), then run the server in the foreground.
set -eu
datadir=/var/lib/mysql
if [ ! -d "$datadir/mysql" ]; then
    echo "mariadb-start: initialising $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket \
        --skip-test-db >/dev/null
fi
exec mariadbd --user=mysql --datadir="$datadir" --socket=/run/mysqld/mysqld.sock \
    --bind-address=0.0.0.0 --skip-name-resolve "$@"
