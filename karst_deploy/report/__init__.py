"""What people see, in one place: rich tables (`tables`), PNG plots (`plots`), progress on
stderr (`progress`) and printing them to a terminal or a log (`render`).

Library modules import only `karst_deploy.progress` (a leaf that imports rich alone);
tables and plots are used by the command line and the demo, which sit on top.
"""
