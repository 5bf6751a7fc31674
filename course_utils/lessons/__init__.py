"""One module per lesson topic; the prefix names the lesson (``l4_freeze``: Lesson 4). Core modules
(``course_utils.*``) never import these; a lesson module may import any core module."""
