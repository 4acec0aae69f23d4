"""
The HTTP push API: JSON over twisted.web under C{/v1}, for back-ends and
operators (the C{mpush} command), next to the MPush long-connection port.
"""
