"""
C{python -m mpush.push}: the same command as C{mpush-push}.
"""

from mpush.push.cli import main

if __name__ == "__main__":
    main()
