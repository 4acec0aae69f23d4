"""
C{python -m mpush.client}: the same command as C{mpush-client}.
"""

from mpush.client.cli import main

if __name__ == "__main__":
    main()
