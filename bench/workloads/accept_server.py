"""Accepts connections and closes them, until killed. Prints "ready" once it listens.

Usage: accept_server.py ADDRESS PORT
"""

import socket
import sys


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((sys.argv[1], int(sys.argv[2])))
    listener.listen(4096)
    print("ready", flush=True)
    while True:
        conn, _peer = listener.accept()
        conn.close()


if __name__ == "__main__":
    main()
