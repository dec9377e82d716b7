"""nbgrader's settings for the prune_magic exercises: copy this file into your course folder.

README.md ("For teachers") has the commands; the test suite runs them with this file.
"""

c = get_config()  # noqa: F821  (nbgrader defines it when it reads this file)

# Your course's name: students fetch and submit with `--course pruning`.
c.CourseDirectory.course_id = "pruning"

# nbgrader stops a cell after 30 s by default and scores it 0. The slowest cells train a model
# (04-mac-budget trains a CNN for 5 epochs) or sweep one (03-protect-layers): about 10 s each on
# an idle 2-core machine, over 30 s when the machine is busy grading other notebooks too.
c.Execute.timeout = 300
